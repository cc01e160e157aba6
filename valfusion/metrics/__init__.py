"""valfusion.metrics"""
