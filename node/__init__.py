"""fedbus.node"""
