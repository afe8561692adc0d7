"""The ERP side: keeps a sink equal to an order platform, with no update missed and none applied
twice, across crashes and restarts. Start at `ordersync.agent.engine.SyncEngine` and the
project's ARCHITECTURE.md."""
