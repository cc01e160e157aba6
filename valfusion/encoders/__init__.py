"""valfusion.encoders"""
