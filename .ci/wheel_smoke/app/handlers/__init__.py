"""The user's own ``handlers`` package: it must still import beside an installed streamcqrs."""

OWN = "the user's handlers package"
