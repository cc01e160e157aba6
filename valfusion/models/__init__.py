"""valfusion.models"""
