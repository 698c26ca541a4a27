"""``pullhealth agent``: the node's own pull path for failing pods on that node."""
