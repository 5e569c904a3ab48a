"""Backup and restore of a whole cluster's replicated state.

- archive.py: the backup file (a header in the clear, the state sealed with the
  cluster's encryption key) and the summary a restored cluster is checked against;
- restore.py: `ragraft restore`: a new cluster's first nodes seeded with the state
  (offline, into empty data directories).

The backup itself is taken by a node (node/http/backup.py: a read barrier, then
the driver's snapshot of the state) and written by `ragraft backup`
(node/cli/commands/backup.py).
"""
