"""The `ragraft` command line: main.py (entry point), parser.py (the client
commands' arguments), commands/ (their implementations, imported on use so that
`ragraft --help` starts fast), launcher.py (`ragraft up`: a local cluster).

May import: node.client, node.replica.vocabulary, node.config, node.runtime (to
run a node).  Never consensus/ or node.http.
"""
