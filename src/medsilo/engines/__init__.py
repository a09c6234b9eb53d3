"""Engines move messages between the Coordinator and the Sites; they hold no algorithm."""
