"""AI-feedback loops (`rlaif loop`) and head-to-head evaluation (`rlaif eval`)."""
