"""The agent's side of presence: it tells the master it is here, and accepts presence
subscription only from the master."""

from wokkel import xmppim


class AgentPresence(xmppim.PresenceProtocol):
    """Available to all contacts and directly to the master; follows the master."""

    def __init__(self, master_jid, on_session, on_master):
        super().__init__()
        self.master = master_jid.userhostJID()
        self.on_session = on_session
        self.on_master = on_master

    def connectionInitialized(self):
        super().connectionInitialized()
        self.available()
        # Directed presence: the server tells the master at once when this session ends.
        self.available(recipient=self.master)
        self.subscribe(self.master)
        self.on_session(True)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.on_session(False)

    def subscribeReceived(self, presence):
        if presence.sender.userhostJID() == self.master:
            self.subscribed(self.master)
        else:
            self.unsubscribed(presence.sender.userhostJID())

    def availableReceived(self, presence):
        if presence.sender.userhostJID() == self.master:
            self.on_master(True)

    def unavailableReceived(self, presence):
        if presence.sender.userhostJID() == self.master:
            self.on_master(False)
