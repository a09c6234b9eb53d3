"""Federation: typed messages, strategies, the Site and Coordinator round logic."""
