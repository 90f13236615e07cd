"""fedbus.broker"""
