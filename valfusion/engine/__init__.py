"""valfusion.engine"""
