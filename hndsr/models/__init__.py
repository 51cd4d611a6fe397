"""Networks of the three-stage model, a parameter-free DDIM scheduler, and the composite model."""
