"""Password hashing with Argon2id (argon2-cffi's ``PasswordHasher``) and the password policy.

Hashing and verifying are CPU- and memory-heavy by design (default: 64 MiB, 3 passes), so they
run in worker threads, at most ``concurrency`` at a time: a burst of logins cannot stall the
event loop or exhaust memory. A login whose stored hash was made with other parameters than the
current ones gets a fresh hash (``needs_rehash``). Unknown users are verified against a dummy
hash so that a login takes the same time whether or not the name exists.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MAX_PASSWORD_CHARS = 1024


class Passwords:
    def __init__(
        self,
        *,
        time_cost: int | None = None,
        memory_cost_kib: int | None = None,
        parallelism: int | None = None,
        concurrency: int = 4,
    ) -> None:
        defaults = PasswordHasher()
        self.hasher = PasswordHasher(
            time_cost=time_cost or defaults.time_cost,
            memory_cost=memory_cost_kib or defaults.memory_cost,
            parallelism=parallelism or defaults.parallelism,
        )
        self._sem = asyncio.Semaphore(concurrency)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        async with self._sem:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> tuple[bool, bool]:
        """``(matches, needs_rehash)``; ``stored`` None (no password yet) never matches."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(24))
        target = stored or self._dummy
        async with self._sem:
            ok = await asyncio.to_thread(self._verify, target, password)
        if not ok or stored is None:
            return False, False
        return True, self.hasher.check_needs_rehash(stored)

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def policy_problems(password: str, confirm: str, *, username: str, min_length: int) -> list[str]:
    """Why ``password`` cannot be used (empty when it can)."""
    problems: list[str] = []
    if password != confirm:
        problems.append("The two passwords differ.")
    if len(password) < min_length:
        problems.append(f"The password needs at least {min_length} characters.")
    if len(password) > MAX_PASSWORD_CHARS:
        problems.append(f"The password may have at most {MAX_PASSWORD_CHARS} characters.")
    if password.strip().lower() == username.lower():
        problems.append("The password must not be the user name.")
    if password and len(set(password)) < 4:
        problems.append("The password needs at least four different characters.")
    return problems
