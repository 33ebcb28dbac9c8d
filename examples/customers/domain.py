"""The customer and the numbering singleton, with their messages."""

from __future__ import annotations

from streamcqrs.domain import Aggregate, Event, Operation, message


@message("customers.CreateCustomer")
class CreateCustomer(Operation):
    """A client asks for a new customer (put under the customer's id)."""

    name: str


@message("customers.CustomerCreated")
class CustomerCreated(Event):
    """The customer exists; it has no number yet."""

    name: str


@message("customers.NumberAssigned")
class NumberAssigned(Event):
    """The customer got its number."""

    number: int


@message("customers.NumberTaken")
class NumberTaken(Event):
    """The numbering singleton handed out ``number``."""

    number: int


class Customer(Aggregate):
    """A customer: a name, and a number once one is assigned."""

    name: str = ""
    number: int | None = None

    def apply(self, event: Event) -> None:
        """Fold one event."""
        match event:
            case CustomerCreated(name=name):
                self.name = name
            case NumberAssigned(number=number):
                self.number = number


class Numbering(Aggregate):
    """The one ``numbering`` aggregate: the latest number handed out."""

    latest: int = 0

    def apply(self, event: Event) -> None:
        """Fold one event."""
        if isinstance(event, NumberTaken):
            self.latest = event.number


NUMBERING = "numbering"
"""The id of the numbering singleton."""
