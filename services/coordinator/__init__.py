"""The coordinator: owns sessions and every generation's state; binds all endpoints."""
