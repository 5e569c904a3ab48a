"""ragraft web dashboard (Panel), served by every node."""
