"""Membership, quorum, gossip (push and anti-entropy pull), intake and peer scoring."""
