"""Training on seeded synthetic data with a planted signal; writes artifacts to the model store."""
