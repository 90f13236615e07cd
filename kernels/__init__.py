"""fedbus.kernels"""
