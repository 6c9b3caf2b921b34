"""Who is who across two deployments: each source user's account in the destination.

A source user matches the destination's active user with the same e-mail, compared without case
(``choices.match_users = "email"``), or the one ``choices.user_map`` names (source e-mail or id ->
destination e-mail or id: the exceptions, and the way without e-mail matching). A user matches nobody
when no active destination user has that e-mail, when two do (ambiguous), when the map names a user
the destination lacks or who is not active, or when the source user is not active: each says why in
words, for ``projmig plan`` and for the one line that refuses a migration (or, with
``choices.skip_unmatched``, for the report's line of the studies left behind).

Reads both databases, writes nothing.
"""

from __future__ import annotations

from collections.abc import Collection

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .choices import RunChoices

ACTIVE = "ACTIVE"


class Person(BaseModel):
    id: int
    email: str
    name: str
    status: str
    primary_gid: int | None

    def describe(self) -> str:
        return f"{self.email} (user {self.id})"


class Match(BaseModel):
    """A source user and their destination account (or why there is none)."""

    source: Person
    destination: Person | None = None
    problem: str | None = None  # why the user matches no one

    @property
    def matched(self) -> bool:
        return self.destination is not None and self.problem is None


async def people(conn: AsyncConnection, *, ids: Collection[int] = (), gids: Collection[int] = ()) -> list[Person]:
    """The users with these ids, or whose primary group is one of ``gids``."""
    rows = await conn.execute(
        text("SELECT id, email, name, status::text, primary_gid FROM users WHERE id = ANY(:i) OR primary_gid = ANY(:g)"),
        {"i": list(ids), "g": list(gids)},
    )
    return [Person(id=r[0], email=r[1], name=r[2], status=r[3], primary_gid=r[4]) for r in rows]


async def match_people(
    src: AsyncConnection, dst: AsyncConnection, sources: list[Person], choices: RunChoices
) -> dict[int, Match]:
    """source user id -> :class:`Match`, for each of ``sources``."""
    emails = [p.email.lower() for p in sources]
    mapped = {key.strip().lower(): value.strip() for key, value in choices.user_map.items()}
    wanted_ids = [int(v) for v in mapped.values() if v.isdigit()]
    wanted_emails = [v.lower() for v in mapped.values() if not v.isdigit()]
    rows = await dst.execute(
        text("SELECT id, email, name, status::text, primary_gid FROM users "
             "WHERE lower(email) = ANY(:e) OR id = ANY(:i)"),
        {"e": emails + wanted_emails, "i": wanted_ids},
    )
    candidates = [Person(id=r[0], email=r[1], name=r[2], status=r[3], primary_gid=r[4]) for r in rows]
    by_email: dict[str, list[Person]] = {}
    for person in candidates:
        by_email.setdefault(person.email.lower(), []).append(person)
    by_id = {p.id: p for p in candidates}

    matches: dict[int, Match] = {}
    for person in sources:
        match = Match(source=person)
        named = mapped.get(str(person.id)) or mapped.get(person.email.lower())
        if person.status != ACTIVE:
            match.problem = f"not active in the source (status {person.status})"
        elif named is not None:
            found = [by_id[int(named)]] if named.isdigit() and int(named) in by_id else by_email.get(named.lower(), [])
            active = [p for p in found if p.status == ACTIVE]
            if not found:
                match.problem = f"the user map names {named!r}, who is not in the destination"
            elif not active:
                match.problem = f"the user map names {named!r}, who is not active in the destination"
            else:
                match.destination = active[0]
        elif choices.match_users == "email":
            active = [p for p in by_email.get(person.email.lower(), []) if p.status == ACTIVE]
            if len(active) > 1:
                match.problem = f"{len(active)} active destination users have the e-mail {person.email!r} (ambiguous)"
            elif not active:
                match.problem = f"no active destination user has the e-mail {person.email!r}"
            else:
                match.destination = active[0]
        else:
            match.problem = "not in the user map"
        if match.destination is not None and match.destination.primary_gid is None:
            match.problem, match.destination = f"destination user {match.destination.id} has no primary group", None
        matches[person.id] = match
    return matches
