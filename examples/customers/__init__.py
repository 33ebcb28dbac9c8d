"""Customer numbers (the seed's exclusive-access example): unique, gapless, assigned later.

A client creates a customer; the create handler records it and submits a ticket for
``Customer.assign_number`` in the same commit. The ticket's method takes the
``customer-number`` lease, checks its precondition (the customer has no number yet), takes
the next number from the ``Numbering`` singleton and gives it to the customer, in one
commit fenced by the lease. However many bots run, numbers are 1, 2, 3, ... with no
duplicate and no gap.

    streamcqrs run examples.customers:app --processes 3
    python -m examples.customers demo        # a server, 3 bots, 200 customers
"""

from examples.customers.app import app
from examples.customers.domain import Customer, Numbering

__all__ = ["Customer", "Numbering", "app"]
