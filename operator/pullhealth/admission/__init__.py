"""The admission webhook: warnings at `kubectl apply` for images that cannot be pulled."""
