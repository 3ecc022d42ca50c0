"""distrl: distributed actor-learner RL."""
__version__ = "0.1.0"
