"""Audits and reputation: peers check each other's results, and every peer computes the
same score table from the same signed events (rules.py has the formula)."""
