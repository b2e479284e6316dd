"""A Channels chat room for the fan-out scenario: every message goes to every member."""
