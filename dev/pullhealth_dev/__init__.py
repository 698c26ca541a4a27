"""pullhealth-dev: the local world for tests and demos (not part of the runtime wheel)."""
