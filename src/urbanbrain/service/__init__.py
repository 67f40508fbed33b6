"""The brain as a service: device ingress, storage, read API, live cockpit."""
