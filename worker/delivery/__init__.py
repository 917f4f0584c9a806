"""Where results go: choosing destinations (rules) and sending to them (C-STORE, STOW-RS, TLS)."""
