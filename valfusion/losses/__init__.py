"""valfusion.losses"""
