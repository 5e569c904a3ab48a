"""The replicated state of a node and the one seam that changes it.

What lives here:
- vocabulary.py: the names and limits every layer shares (task states and types,
  search modes, roles, task parameters and their bounds).  The API, the OpenAPI
  document, the chat route, the engine, the dashboard, the TUI and the CLI
  import them from here; nothing writes them again.
- refusal.py: `Refusal` (a command that cannot apply: a code, a message,
  details) and `Refused`, the exception a proposer sees.
- commands.py: every command as a frozen dataclass; codec.py: the one
  versioned, tagged wire form of commands (and of refusals inside results).
- tasks.py, accounts.py, state.py: the deterministic state machines the log
  drives (the knowledge base's lives in node/rag/knowledge.py and is given to
  NodeState); apply reads no clock and draws no random number.
- replica.py: `Replica`, through which everything proposes and reads.  Nothing
  outside this package talks to the Raft driver.

May import: consensus/ and the standard library (and msgpack).  Never node/http,
node/execution, node/cli, ui/ or tui/ (tests/test_layers.py checks it).
"""
