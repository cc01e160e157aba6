"""valfusion.layers"""
