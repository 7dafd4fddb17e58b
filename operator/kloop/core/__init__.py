"""The pure decision core: observed state and the time in, actions and status out. No I/O here."""
