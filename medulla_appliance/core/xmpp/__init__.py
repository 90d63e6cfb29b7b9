"""XMPP for every daemon and the agent: one way to connect (auth, client), small
feature handlers, and the signed-envelope channel."""
