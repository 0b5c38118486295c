"""Blind expert review of tuned vs base vs base+prompt: packet, annotation round trip, statistics, gate."""
