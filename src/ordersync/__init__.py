"""ordersync: an order platform (the hub) and the ERP-side agent that mirrors it."""

__version__ = "0.1.0"
