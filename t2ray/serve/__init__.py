"""Ray Serve deployments (the two-stage classifier -> adapted-model graph grows here)."""
