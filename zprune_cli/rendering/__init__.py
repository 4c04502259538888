"""Documents rendered from records: the model card, the HTML report and the leaderboard plot."""
