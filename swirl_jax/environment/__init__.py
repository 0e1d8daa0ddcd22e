"""Tools (calculator, search), the multi-step protocol and the episode loop."""
