"""Message types shared by the tests, registered in the process-wide registry."""

from __future__ import annotations

from streamcqrs.domain import Aggregate, Event, Operation, message


@message("test.Ping")
class Ping(Operation):
    n: int
    text: str = ""


@message("test.Opened")
class Opened(Event):
    owner: str


@message("test.Deposited")
class Deposited(Event):
    amount: int


class Account(Aggregate):
    owner: str = ""
    balance: int = 0

    def apply(self, event: Event) -> None:
        match event:
            case Opened(owner=owner):
                self.owner = owner
            case Deposited(amount=amount):
                self.balance += amount
