"""One module per network step of the pull path."""
