"""Figure scripts: each writes PNG and PDF and returns the numbers it prints in the figure."""
