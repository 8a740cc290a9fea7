"""The gateway's users, as the coordinator keeps them: each signs in with a token whose sha256 alone is stored (the
token never leaves the client that made it), and owns the sessions it makes. A part of ``machine.Coordinator``;
pure. The table is read once, before the first request about users (the shell's ``read_for``), and kept current
by this coordinator's own changes, the only ones there are."""
from __future__ import annotations

from protocol import answers, messages as m
from services.coordinator.changes import Deferred
from services.coordinator.effects import RequestRefused, ToPersister
from services.coordinator.persistence import PersistTracker


class GatewayUsers:
    def __init__(self, new_id, persisted: PersistTracker) -> None:
        self.new_id, self.persisted = new_id, persisted
        self.rows: dict[str, dict] | None = None  # name -> its row; None until read
        self.by_hash: dict[str, str] = {}  # token hash -> name
        self.waiting: dict[str, str] = {}  # save op id -> the user it saves

    def loaded(self, rows: list[dict]) -> None:
        if self.rows is None:
            self.rows = {row["name"]: dict(row) for row in rows}
            self.by_hash = {row["token_hash"]: row["name"] for row in rows}

    def _rows(self) -> dict[str, dict]:
        if self.rows is None:  # the shell reads the table before any request about users
            raise RequestRefused("the users are not read yet; try again")
        return self.rows

    def on_add(self, msg: m.AddUser, now: float, out: list) -> Deferred:
        rows = self._rows()
        if msg.name in rows:
            raise RequestRefused(f"there is a user {msg.name} already" + (" (revoked: choose another name)"
                                                                          if rows[msg.name]["revoked_at"] else ""))
        if msg.token_hash in self.by_hash:
            raise RequestRefused("that token is another user's: make a new one")
        row = {"name": msg.name, "token_hash": msg.token_hash, "created_at": now, "revoked_at": None}
        rows[msg.name], self.by_hash[msg.token_hash] = row, msg.name
        return self._save(row, now, out)

    def on_revoke(self, msg: m.RevokeUser, now: float, out: list) -> Deferred:
        row = self._rows().get(msg.name)
        if row is None:
            raise RequestRefused(f"no user {msg.name}")
        if row["revoked_at"] is None:
            row["revoked_at"] = now
        return self._save(row, now, out)

    def _save(self, row: dict, now: float, out: list) -> Deferred:
        op = m.SaveUser(row["name"], row["token_hash"], row["created_at"], row["revoked_at"], self.new_id())
        out.append(ToPersister(self.persisted.save_user(op, now)))
        self.waiting[op.op_id] = row["name"]
        return Deferred(("user", op.op_id))

    def saved(self, msg: m.UserSaved) -> list[tuple[tuple, answers.Result]]:
        """A save applied: its request is answered with the user as it stands."""
        self.persisted.on_user_saved(msg.op_id)
        name = self.waiting.pop(msg.op_id, None)
        if name is None or self.rows is None:
            return []
        return [(("user", msg.op_id), answers.UserChanged(user=view(self.rows[name])))]

    def on_list(self, msg: m.Users, now: float, out: list) -> answers.Result:
        return answers.UserList(users=[view(row) for row in sorted(self._rows().values(), key=lambda r: r["name"])])

    def on_whois(self, msg: m.WhoIs, now: float, out: list) -> answers.Result:
        name = self.by_hash.get(msg.token_hash) if self._rows() else None
        if name is None or self.rows[name]["revoked_at"] is not None:
            raise RequestRefused("unknown or revoked token")
        return answers.SignedIn(name=name)


def view(row: dict) -> answers.UserView:
    return answers.UserView(name=row["name"], created_at=row["created_at"], revoked_at=row["revoked_at"])
