"""Getting the public datasets: COVID-CT's official files and the SARS-CoV-2 CT-scan set through the Kaggle client."""
