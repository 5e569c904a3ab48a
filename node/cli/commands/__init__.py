"""The `ragraft` client commands, one module per area: `tasks` (submit, tasks,
show, cancel, abort, retry), `kb` (the knowledge base), `cluster` (login,
status); `output` renders tables and follows tasks' progress.  `node.cli.parser`
declares their arguments and dispatches to them; these modules are imported only
when one of their commands runs."""
