"""fedbus.aggregator"""
