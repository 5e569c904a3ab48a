"""A Jepsen-style test bed: ragraft nodes in Linux network namespaces, a nemesis that
cuts, slows, pauses and kills them, workload clients that record a history, and a
checker over that history and the nodes' final state.

    netns.py    namespaces rgN on a bridge (in its own namespace rgbr), setup/teardown
    faults.py   iptables cuts, packet loss, tc bandwidth limits, heal
    cluster.py  node processes inside the namespaces: start, kill -9, SIGSTOP/SIGCONT, restart
    client.py   HTTP client, workload clients, probes
    history.py  append-only history of operations (JSON lines)
    schedule.py the seeded nemesis schedule
    runner.py   one run: setup, workload + nemesis, final state, checker, artifacts
    checker.py  the checker (pure: history + final state -> report)
    __main__.py `python -m tests.nemesis --minutes N --seed S` (soak) or `--check DIR`
"""
