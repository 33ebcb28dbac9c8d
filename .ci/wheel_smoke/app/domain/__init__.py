"""The user's own ``domain`` package: it must still import beside an installed streamcqrs."""

OWN = "the user's domain package"
