"""Delivery missions: the state machine that flies one parcel, and its durable journal."""
