"""Deployment tooling: canary rollouts with kubectl, container image tags, generated alert manifests."""
