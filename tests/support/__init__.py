"""Real local servers (DNS, registries, token/OAuth endpoints) for integration tests.

Everything listens on 127.0.0.1 only; hostnames resolve solely through the
:class:`support.dns.Dnsmasq` nameserver handed to the code under test.
"""
