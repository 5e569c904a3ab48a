"""Who may do what, decided where commands are applied.

Every authorization that depends on replicated data (a user's role, a task's owner, a
quota) is made here, inside NodeState.apply, the same way on every replica; never on a
proposer's replica, which may lag behind a role change, a deletion or another
submission.  The API still checks what it can early, to answer fast; this is the
check that holds.

The checks start once the accounts are initialised: before that nobody could have
been authenticated, and the entries are the cluster's own (or a test's).
"""

from __future__ import annotations

import dataclasses

from node.replica import commands as c
from node.replica.accounts import Accounts
from node.replica.refusal import RefusalCode, refuse
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import KB_WRITERS, RETRYABLE_STATES, TaskType, UserRole


class Policy:
    def __init__(self, accounts: Accounts, tasks: TaskQueue) -> None:
        self.accounts = accounts
        self.tasks = tasks

    @property
    def active(self) -> bool:
        return self.accounts.initialized

    def running_limit(self, owner: str) -> int | None:
        return self.accounts.quota(owner).max_running if owner in self.accounts.users else None

    def submit(self, cmd: c.Submit) -> None:
        """A new task of `cmd.owner`, or a retry of one (raises Refusal)."""
        if not self.active:
            return
        if cmd.retry_of is not None:
            self._retry(cmd)
        self._within_quota(cmd.owner, cmd.priority)

    def upload(self, cmd: c.Upload) -> None:
        if not self.active:
            return
        self.kb_change(cmd.owner)
        self._within_quota(cmd.owner, cmd.priority)

    def kb_change(self, by: str | None) -> None:
        """Adding, replacing, enabling or deleting a document: editors and admins."""
        if not self.active or by is None:
            return
        role = self.accounts.role_of(by)
        if role not in KB_WRITERS:
            raise refuse(
                RefusalCode.FORBIDDEN,
                f"{by} may not change the knowledge base (role {role or 'none'}); "
                "an admin can make them an editor",
            )

    def admin_only(self, by: str, what: str) -> None:
        if self.active and self.accounts.role_of(by) is not UserRole.ADMIN:
            raise refuse(RefusalCode.FORBIDDEN, f"only an admin may {what}")

    def scoped(self, cmd: c.Cancel | c.Abort) -> c.Cancel | c.Abort:
        """A cancel or abort limited to the asker's own tasks unless they are an admin."""
        if not self.active or cmd.owner is not None:
            return cmd
        if self.accounts.role_of(cmd.by) is UserRole.ADMIN:
            return cmd
        return dataclasses.replace(cmd, owner=cmd.by)

    def _retry(self, cmd: c.Submit) -> None:
        assert cmd.retry_of is not None
        by = cmd.by or cmd.owner
        original = self.tasks.get(cmd.retry_of)
        if original is None or (
            original.owner != by and self.accounts.role_of(by) is not UserRole.ADMIN
        ):
            raise refuse(RefusalCode.NOT_FOUND, f"no task {cmd.retry_of}")
        if original.owner != cmd.owner:
            raise refuse(RefusalCode.INVALID, "a retry keeps the owner of the task it retries")
        if original.type is TaskType.INGEST:
            raise refuse(
                RefusalCode.CONFLICT,
                "an ingest task cannot be retried: its upload was dropped when it failed; "
                "upload the file again",
                state=str(original.state),
            )
        if original.state not in RETRYABLE_STATES:
            raise refuse(
                RefusalCode.CONFLICT,
                f"task {original.id} is {original.state}; only failed or cancelled tasks "
                "can be retried",
                state=str(original.state),
            )

    def _within_quota(self, owner: str, priority: int) -> None:
        if self.accounts.role_of(owner) is None:
            raise refuse(RefusalCode.FORBIDDEN, f"user {owner} does not exist or is disabled")
        quota = self.accounts.quota(owner)
        if quota.max_priority is not None and priority > quota.max_priority:
            raise refuse(
                RefusalCode.FORBIDDEN,
                f"priority {priority} is above {owner}'s highest allowed, {quota.max_priority}",
                field="priority",
                max_priority=quota.max_priority,
            )
        queued = self.tasks.live(owner)[0]
        if quota.max_queued is not None and queued >= quota.max_queued:
            raise refuse(
                RefusalCode.QUOTA_EXCEEDED,
                f"{owner} has {queued} tasks waiting, their quota's most; retry when some "
                "have started, or cancel some",
                max_queued=quota.max_queued,
                queued=queued,
            )
